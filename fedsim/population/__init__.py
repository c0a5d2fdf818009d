"""Population models: participation (who shows up) and speed (how long a job takes)."""

from fedsim.population import heterogeneous as _heterogeneous  # noqa: F401  (bernoulli, markov, cyclic, trace)
from fedsim.population import poisson as _poisson  # noqa: F401  (poisson: equal q, for DP)
from fedsim.population import simple as _simple  # noqa: F401  (registers always, uniform, speeds)
from fedsim.population.base import PARTICIPATION, SPEEDS, Participation, Population, SpeedModel, build_population

__all__ = ["PARTICIPATION", "SPEEDS", "Participation", "Population", "SpeedModel", "build_population"]

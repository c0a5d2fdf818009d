"""Robust aggregators (one module per rule) and the Byzantine arrival stage; importing registers them.

Weightings: median, trimmed_mean (Yin et al. 2018), krum, multi_krum (Blanchard et al. 2017),
bulyan (El Mhamdi et al. 2018), geomed (RFA, Pillutla et al. 2022), centered_clipping
(Karimireddy et al. 2021), monna (nearest-neighbour mixing + trimmed mean). Each combines with
any server optimizer and any client transform.
"""

from strategies.robust.attacks import ByzantineStage, alie_z
from strategies.robust.base import RobustAggregator, coordinate_median
from strategies.robust.bulyan import Bulyan, bulyan_select
from strategies.robust.centered_clipping import CenteredClipping, centered_clip
from strategies.robust.geomed import GeometricMedian, weiszfeld
from strategies.robust.krum import Krum, krum_scores
from strategies.robust.median import Median
from strategies.robust.nnm import NNMTrimmedMean, nearest_neighbour_mixing
from strategies.robust.trimmed_mean import TrimmedMean, trimmed_mean_of

__all__ = [
    "ByzantineStage",
    "alie_z",
    "RobustAggregator",
    "coordinate_median",
    "Bulyan",
    "bulyan_select",
    "CenteredClipping",
    "centered_clip",
    "GeometricMedian",
    "weiszfeld",
    "Krum",
    "krum_scores",
    "Median",
    "NNMTrimmedMean",
    "nearest_neighbour_mixing",
    "TrimmedMean",
    "trimmed_mean_of",
]

from strategies.robust import presets as _presets  # noqa: E402,F401  (registers the presets)

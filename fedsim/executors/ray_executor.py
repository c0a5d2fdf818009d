"""Former home of the Ray executor, kept for old imports: it is now the package :mod:`fedsim.executors.ray`."""

from fedsim.executors.ray import RayExecutor, init_local_ray, ray_executor, resolve_ray_address

__all__ = ["RayExecutor", "init_local_ray", "resolve_ray_address", "ray_executor"]

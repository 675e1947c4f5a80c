"""The Ray runner's rooms: ``connect`` (start or join Ray, check resources), ``actors`` (the
evaluator actor, baseline training on a worker), ``timing`` (the timing actor on the target
node), ``mailbox`` (reports at rungs and the relay to the referee), ``pool`` (``RayRunner``:
the actor pool, retries and timeouts)."""

from autocompress.runners.ray.pool import RayRunner

__all__ = ["RayRunner"]

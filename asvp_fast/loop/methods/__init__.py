"""Active-learning methods, one file each, registered by name (configs name them).

Built in: ``random``, ``svpp``, ``standard``, ``activeft-pre``, ``asvp``, ``prunefuse``, ``svp-net`` and ``standard-continued``. Add your own with
:func:`register_method` (see :mod:`.base`).
"""

from .activeft_pre import ActiveFTPreMethod
from .asvp import ASVPMethod, ASVPOptions, should_refresh
from .base import METHODS, Method, MethodContext, MethodSpec, derive_seed, make_method, method_class, register_method
from .prunefuse import ContinuedStandardMethod, PruneFuseMethod, PruneFuseOptions, SVPNetMethod
from .random import RandomMethod
from .standard import StandardMethod
from .svpp import SVPpMethod

register_method("random", RandomMethod)
register_method("svpp", SVPpMethod)
register_method("standard", StandardMethod)
register_method("activeft-pre", ActiveFTPreMethod)
register_method("asvp", ASVPMethod)
register_method("prunefuse", PruneFuseMethod)
register_method("svp-net", SVPNetMethod)
register_method("standard-continued", ContinuedStandardMethod)

__all__ = ["ASVPMethod", "ASVPOptions", "ActiveFTPreMethod", "ContinuedStandardMethod", "METHODS", "Method", "MethodContext", "MethodSpec",
           "PruneFuseMethod", "PruneFuseOptions", "RandomMethod", "SVPNetMethod", "SVPpMethod", "StandardMethod", "derive_seed", "make_method", "method_class",
           "register_method", "should_refresh"]

"""Active-learning methods, one file each, registered by name (configs name them).

Built in: ``random``, ``svpp``, ``standard``, ``activeft-pre`` and ``asvp``. Add your own with
:func:`register_method` (see :mod:`.base`).
"""

from .activeft_pre import ActiveFTPreMethod
from .asvp import ASVPMethod, ASVPOptions, should_refresh
from .base import METHODS, Method, MethodContext, MethodSpec, derive_seed, make_method, method_class, register_method
from .random import RandomMethod
from .standard import StandardMethod
from .svpp import SVPpMethod

register_method("random", RandomMethod)
register_method("svpp", SVPpMethod)
register_method("standard", StandardMethod)
register_method("activeft-pre", ActiveFTPreMethod)
register_method("asvp", ASVPMethod)

__all__ = ["ASVPMethod", "ASVPOptions", "ActiveFTPreMethod", "METHODS", "Method", "MethodContext", "MethodSpec",
           "RandomMethod", "SVPpMethod", "StandardMethod", "derive_seed", "make_method", "method_class",
           "register_method", "should_refresh"]

"""Which CapHumanSession the demo and `caphuman sweep` use (one import to switch)."""

# TODO(session): replace with `from caphuman.session import CapHumanSession` once it lands on main.
from caphuman.demo.session_standin import CapHumanSession

__all__ = ["CapHumanSession"]

"""XLA flags for quick compilation (no imports: set them before JAX starts).

Toy runs and the test suite compile far more than they compute; at
optimisation level 0 XLA compiles about a third faster and the code runs
slower. ``hbmeta run --toy`` sets them in a fresh process; the tests set them
for themselves and every process they start.

Example:
    >>> with_quick_compile("--xla_force_host_platform_device_count=2").split()
    ['--xla_force_host_platform_device_count=2', '--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true']
"""

QUICK_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def with_quick_compile(flags: str = "") -> str:
    """``flags`` (an ``XLA_FLAGS`` value) with the quick-compile flags added where they are not set already."""
    for flag in QUICK_COMPILE_FLAGS:
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    return flags

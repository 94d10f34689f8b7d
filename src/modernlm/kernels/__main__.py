"""`python -m modernlm.kernels`: build (or find) the cached CPU kernels and say where they are."""

from modernlm.kernels import _build_dir, build

build(verbose=False)
print(f"modernlm kernels ready in {_build_dir()}")

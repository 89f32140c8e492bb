"""Layers used by two or more papers: `attention` dispatches to dense / cuDNN / block-sparse / SVG backends by name;
`sequence_parallel` wraps any backend as the "ulysses" backend (DeepSpeed-Ulysses over a mesh axis);
`transformer` holds the one adaLN-Zero block of the diffusion transformers (image DiT, SVG's video DiT, benchmarks);
`embeddings` the timestep, class and 2D position embeddings; `dit` the image DiT and its diffusers loader
(`safetensors_io` reads the weights lazily, `porting` maps them by name table); `flux` FLUX.1's transformer and
its pipeline helpers; `classifiers` the small MLP/CNN image classifiers."""

from jaxgen.nn import sequence_parallel  # noqa: F401,E402  (registers the "ulysses" attention backend)

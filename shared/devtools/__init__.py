"""Tools for trying vlmq and developing it, apart from what runs in production: `vlmq demo`
(the embedded stack end to end) and the builder of the tiny Qwen2-VL that the demo and the
tests run."""

"""LayerT2V: layered text-to-video generation and the platform that makes, trains, exports and serves it."""

from layert2v.allocator import keep_freed_memory

keep_freed_memory()  # before any tensor: every entry point (CLI, stages, flows, service, pyfunc) imports the package

"""LayerT2V: layered text-to-video generation and the platform that makes, trains, exports and serves it."""

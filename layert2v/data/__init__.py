"""VidLayer data: the synthetic generator, the on-disk layouts, prepare and its cache."""

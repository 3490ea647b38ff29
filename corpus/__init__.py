"""The corpus stage: sources, fetching, pixel-art canonicalization, perceptual dedupe, and the
catalog and blob store that record it all."""

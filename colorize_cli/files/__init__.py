"""Image files: reading (pixel limit, orientation, decoders' stderr), writing, metadata and provenance, the
gallery page. No torch, no model."""

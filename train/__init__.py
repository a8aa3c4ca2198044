"""stethoedge.train: data loaders, the respiratory-sound simulator, the AST classifier and its training."""

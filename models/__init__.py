"""uniserve models: user/item encoders, training, evaluation, artifacts, data loaders."""

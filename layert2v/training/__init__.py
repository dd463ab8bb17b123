"""Training stages as small LightningModules, and the runner that tracks them in MLflow."""

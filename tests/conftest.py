import os

os.environ.setdefault("MM2LATENT_NO_PROGRESS", "1")

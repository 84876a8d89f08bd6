"""Training loops (StyleGAN2, ...). Import submodules directly, e.g.
``from mm2latent.train.stylegan2 import TrainOptions, train_stylegan2``."""

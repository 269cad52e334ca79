"""Training e4e encoders with the paper's recipe: `e4e train` (issue 14).

One module per concern: `options` (the recipe's settings), `generators` (reading the StyleGAN2
generator to train against), `lossnets` (LPIPS, identity losses), `discriminator` (the latent
discriminator, its code pools and losses), `ranger` (the optimizer), `data` (image folders),
`checkpoints` (the released layout plus the training state), `coach` (the training step and
loop, single process or torchrun/DDP).
"""

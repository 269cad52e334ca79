"""e4e: edit real photos with StyleGAN2 and the e4e encoder."""

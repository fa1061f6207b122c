"""The networks, as plain ``nn.Module``s (no Lightning): ViT, VAEs, GAN/DCGAN, the DDPM U-Net and the diffusion process.

Each keeps the layers and defaults of the design guide (``docs/guide.md``) and none of the defects listed in
``docs/guide_notes.md``; the papers they implement are cited in each module, the reasons for each deviation from the
guide are in ``docs/design_data_networks.md``. Training, losses and logging live in ``lightning_modules/``.
"""

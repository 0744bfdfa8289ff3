"""Stage 2, models: the autoencoders and their losses (TensorFlow/Keras; ``vocabulary`` without).

- ``building``: argument checks and seeded initialisers every builder shares.
- ``ae1``: AE-1, the baseline (dense latent) and its VAE.
- ``ae2``: AE-2, the patch autoencoder and the inpainting U-Net.
- ``segmentation_head``: the U-Net that learns AE-2's anomaly map from image and reconstruction.
- ``similarity``: SSIM and GMS constants, shared by the losses and the anomaly maps.
- ``losses``: the training losses.
- ``precision``: mixed precision on a GPU, float32 on a CPU.
- ``storage``: saving and safe loading of ``model.keras``.
- ``vocabulary``: the names of the models' choices, without Keras (for the parameter check).
"""

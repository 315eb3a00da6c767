"""The model, pure torch: refiner and discriminator, the losses, DiffAugment, the history buffer,
and the export (a trained refiner as files, applied to uint8 images)."""

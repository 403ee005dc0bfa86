"""Neural networks of SS-MGS: spatial transformer, registration and segmentation nets."""

"""What users hand in: images, photos, preprocessing, label names, image sources."""

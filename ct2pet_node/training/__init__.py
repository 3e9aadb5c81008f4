"""Training-side code: paired CT/PET datasets built from real PET/CT studies."""

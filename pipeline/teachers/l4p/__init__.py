"""L4P: a VideoMAEv2 ViT-g/14 video encoder with DPT heads for depth, backward flow, motion mask and
camera rays, written from the facts in docs/teacher.md so that the official checkpoint loads
strictly (module names and shapes match)."""

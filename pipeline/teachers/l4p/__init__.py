"""L4P: a VideoMAEv2 ViT-g/14 video encoder with DPT heads for depth, backward flow, motion mask and
camera rays, built as the released model builds them so that its checkpoint loads strictly: module
names and shapes match the released key list (tests/data/l4p_state_dict.tsv) key for key."""

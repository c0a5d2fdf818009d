"""The fedsim Flower App: thin entry points to fedsim.flower."""

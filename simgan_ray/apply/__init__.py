"""Jobs that apply a trained refiner: refine a whole set (a resumable Ray Data job) and evaluate
refinement on real data (report)."""

"""Motion Differential Sampling: per-frame scores and the clip index rows."""

"""``dsqc batch``: many models × targets × recipes × calibration sets, one isolated build process each."""

"""What every layer uses: the error users see, atomic file writes, the machine (device, precision, processes),
progress lines and the version."""

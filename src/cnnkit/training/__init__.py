"""Training: the loop and its one step (`trainer`), learning-rate schedules (`schedule`), stopping on
request (`stopping`) and the compile warm-up (`warmup`). Import from the modules themselves."""

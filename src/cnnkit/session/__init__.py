"""One training run from start to end: prepare (settings, data, model), plan, fit, test, summarise; resume;
several processes."""

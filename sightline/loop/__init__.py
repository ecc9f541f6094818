"""The loop after serving (DESIGN.md, "The loop"): `retrain` a challenger on a new dataset version, `challenge` it
against the champion on the frozen test and production splits, and keep model versions, aliases and every alias
move in the `registry`. Entry points: sightline.loop.challenge.challenge, sightline.loop.retrain.retrain,
sightline.loop.registry.Registry."""

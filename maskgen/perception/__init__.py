"""Perceptual networks and feature statistics, shared by recipes (perceptual losses) and evaluators.

`digit_classifier` (a digits CNN trained and cached locally on first use), `inception` (FID's
InceptionV3 from a weights file the user gives; never downloaded) and `frechet` (the Fréchet
distance between feature statistics). They sit below both recipes and evaluators, so a recipe
can use a feature network without importing an evaluator, and an evaluator without a recipe.
"""

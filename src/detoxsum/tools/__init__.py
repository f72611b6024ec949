"""Tools run by hand or in CI: PR reports, the seed study, plots, recipes."""

"""Tests of metab_opt.ucbtree, the generic UCB tree sampler (a package, so that its test
modules may share basenames with those of tests/)."""

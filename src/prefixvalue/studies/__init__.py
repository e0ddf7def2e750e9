"""Studies: commands that measure something about values beside the pipeline (values of candidate actions,
counterfactual-token advantages, the soft-prompt conditional distance). Each is a Config, a ``run(config)`` and a
``main(argv)`` like a stage; they read the pipeline's files and call its components, never a stage's internals.
"""

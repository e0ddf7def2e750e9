"""Pipeline stages, in the order they run: collect → label → train → evaluate, and the quickstart
that runs them all. Each stage module is a Config dataclass, a ``run(config)`` and a ``main(argv)``
(the ``prefixvalue <stage>`` command); the components they use live beside this package.
"""

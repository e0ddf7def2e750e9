"""Value-guided sampling: a value steers the policy (best-of-N, value-weighted vote, step beam search, twisted
SMC with the value as the twist). `prefixvalue.steering.engine` runs the methods over any sampler,
`prefixvalue.steering.twists` turns a value checkpoint, the policy's soft value or Monte Carlo into a twist, and
``prefixvalue steer`` (`prefixvalue.studies.steer`) measures them on held-out prompts."""

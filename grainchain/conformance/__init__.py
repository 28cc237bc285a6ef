"""The conformance suite: proves that a provider adapter does what its declaration claims.

    pip install 'grainchain[conformance]'
    pytest --pyargs grainchain.conformance --grainchain-provider NAME      # or: grainchain conformance NAME

For every feature the provider declares supported it checks behaviour (a Hypothesis state machine over the
blocking client, against a model of the sandbox, plus example-based checks for timeouts, large data and
concurrency); for every feature declared unsupported it checks that the call raises CapabilityError naming
that feature and provider, and that the sandbox stays usable. See docs/writing-a-provider.md.
"""

"""What users do with the stages: the compile driver, comparing targets, analytic mode,
perplexity evaluation and the built-in example models.

Studies sit above every stage (they may import frontend, passes, backend and runtime); no stage
imports a study. The compile driver lives here because it runs every stage and hands the passes
a latency pricer built from the runtime's cost model (`analytic.gemm_pricer`).
"""

"""Record-level DP training at a site: DP-SGD (Abadi et al. 2016), split by role.

Which wraps which, outermost first (after Opacus's split into optimizers, grad
samplers and samplers; accounting stays beside, in ``participant.ledger`` and
``participant.calibration``)::

    participant.site
      local_round.train_dp_round      one site round: trainable parameters, optimizer, CSR rows
        training.dp_train             the loop: batches, clipping, noisy step, pipelined
          sampling                    Poisson batches (Opacus's sampler, or a CSPRNG)
          clipping                    per-sample gradient norms and clipped sums, one backward
          noisy_step                  clipped sum + noise into p.grad; per-step or owed noise
            step_noise.StepNoise      each step's fresh Gaussian noise, on a helper thread
            lazy_noise.LazyColumnNoise  noise owed per weight column under plain SGD
      randomness.DPRandom             the only source of DP draws (OS entropy; secure_mode)
      sparse_rows                     fingerprints as CSR rows, Linear layers that read them

Nothing is imported here: Opacus costs ~1.5 s per fresh process, and the site imports
this package on the train path only.
"""

"""The job lifecycle: status machine, retry policy, fencing and the jobs repository."""

-- Confirm the epoch (after a bucket waiter slept): the prelude did the check.
return {fmt(now), epoch}

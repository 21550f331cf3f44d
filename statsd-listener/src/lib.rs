//! Roost's statsd listener (issue 3): placeholder until it is built.

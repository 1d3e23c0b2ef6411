"""The study's science in one place: the measures, the statistics, and the catalogue of every metric a person reads."""

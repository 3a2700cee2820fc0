"""Judges and writers of the self-rewarding loop: class-conditioned prompt writers (LLM, chat
endpoint, shapes grammar) and the self-judge (captioner + detector + CLIP -> one judged score)."""

from rewardiff.judges.prompt_writer import PromptWriter, PromptWriterConfig, build_writer, parse_prompt_lines, write_prompts
from rewardiff.judges.self_judge import JudgeConfig, Judgement, SelfJudge, select

__all__ = ["PromptWriter", "PromptWriterConfig", "build_writer", "parse_prompt_lines", "write_prompts", "JudgeConfig", "Judgement", "SelfJudge", "select"]

#include "common/generation/stop_matcher.h"

#include "gtest/gtest.h"

namespace chord {
namespace {

TEST(StopMatcherTest, PassesTextThroughWithoutStops) {
  StopMatcher m({});
  EXPECT_EQ(m.Feed("hello "), "hello ");
  EXPECT_EQ(m.Feed("world"), "world");
  EXPECT_EQ(m.Finish(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcherTest, HoldsBackAPossibleStartAndReleasesItWhenItIsNot) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.Feed("the E"), "the ");
  EXPECT_EQ(m.Feed("N"), "");
  EXPECT_EQ(m.Feed("D? no, ENx"), "");  // "END" matched across pieces: nothing after it
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched(), "END");
  EXPECT_EQ(m.Feed("more"), "");
  EXPECT_EQ(m.Finish(), "");
}

TEST(StopMatcherTest, ReleasesHeldTextWhenTheMatchFails) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.Feed("EN"), "");
  EXPECT_EQ(m.Feed("x"), "ENx");
  EXPECT_EQ(m.Feed("E"), "");
  EXPECT_EQ(m.Finish(), "E");
}

TEST(StopMatcherTest, EarliestMatchWinsAmongSeveralStops) {
  StopMatcher m({"world", "lo w"});
  EXPECT_EQ(m.Feed("hello world"), "hel");
  EXPECT_EQ(m.matched(), "lo w");
}

TEST(StopMatcherTest, MatchInsideOnePiece) {
  StopMatcher m({"\n\n"});
  EXPECT_EQ(m.Feed("line one\n\nline two"), "line one");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcherTest, MultiByteStopStringsNeverSplitACodePoint) {
  StopMatcher m({"café!"});
  EXPECT_EQ(m.Feed("un caf"), "un ");
  EXPECT_EQ(m.Feed("é au lait"), "café au lait");
  EXPECT_EQ(m.Finish(), "");
}

TEST(StopMatcherTest, EmptyStopStringsAreIgnored) {
  StopMatcher m({""});
  EXPECT_EQ(m.Feed("abc"), "abc");
  EXPECT_FALSE(m.stopped());
}

}  // namespace
}  // namespace chord

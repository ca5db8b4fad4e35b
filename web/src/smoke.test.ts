import { expect, test } from "vitest";

test("the test runner runs", () => {
  expect(1n + 1n).toBe(2n);
});

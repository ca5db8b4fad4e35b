import { useQuery } from "@tanstack/react-query";
import { api, unwrap } from "../../api/client";

export function useAssets() {
  return useQuery({ queryKey: ["assets"], queryFn: () => unwrap(api.GET("/api/v1/assets")), staleTime: 300_000 });
}

/**
 * The payment providers a user may pick. The API has no endpoint listing the enabled
 * connectors (BOURSE_PSP_CONNECTORS), so the default is offered first and the two that
 * Bourse ships by name; an unknown one is refused with `unknown_connector`.
 */
export const PROVIDERS = [
  { value: "", label: "Default provider" },
  { value: "simulator", label: "Simulator" },
  { value: "stripe", label: "Stripe" },
] as const;
